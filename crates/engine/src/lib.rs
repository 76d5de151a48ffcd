//! The engine moves an environment from one revision to another and keeps what runs in line
//! with what is recorded.
//!
//! [`Engine::deploy`] compares the wanted system with what runs and rolls out each changed
//! service, in dependency order, through its release strategy (`deploy`): recreate,
//! blue-green or canary with analysis on the proxy's own figures. Old instances keep running
//! until the whole revision is live, so a failure anywhere puts traffic back where it was and
//! leaves the previous revision untouched. [`Engine::rollback`] (`rollback`) restores an
//! earlier revision, by a traffic switch when its instances are still warm. The same
//! comparison, run against the live revision, is how a restarted server recovers
//! ([`Engine::recover`]). Which instance takes what share of traffic lives in `routing`;
//! dependency edges and their ports in `edges`; the warm pool's file, which keeps warm
//! instances warm across a server restart, in `warm`.

pub mod analysis;
pub mod collect;
pub mod deploy;
pub mod edges;
pub mod exposition;
pub mod hooks;
pub mod plan;
mod rollback;
pub mod routing;
pub mod warm;

pub use deploy::{DeployError, DeployOptions};

use edges::EdgePorts;
use futures_util::future::join_all;
use plan::{ServiceTemplate, desired_templates, plan_services};
use routing::Routing;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::{
    DeployInProgress, DeploymentKind, Event, EventKind, EventSink, InstanceState, Plan, Revision,
    ServiceStatus, now_ms,
};
use tandem_proxy::{ListenerKey, Protocol as ProxyProtocol, Proxy, ServerTls, ServiceLimits};
use tandem_spec::System;
use tandem_store::Store;
use tandem_supervisor::runtime::{InstanceRequest, Runtime};
use tokio::sync::mpsc;
use warm::WarmStore;

/// How long an unchanged dependency may take to become healthy before dependents start.
const DEPENDENCY_WAIT: Duration = Duration::from_secs(60);

/// The values of an environment's secrets (`secrets = [...]` of a service), kept outside
/// the revision store; see `tandem_server`'s secret store. The engine asks for a value only
/// when it builds what an instance (or a hook) is started with, and never logs it.
pub trait SecretValues: Send + Sync {
    /// The current value of secret `name`, if it is set.
    fn value(&self, name: &str) -> Option<String>;
}

/// Where an engine keeps what it needs beside the store.
#[derive(Clone)]
pub struct EngineConfig {
    pub env: String,
    /// The edge-port allocation (`edges.json` in the data directory).
    pub edges_file: PathBuf,
    /// The warm pool, kept across server restarts (`warm.json` in the data directory).
    pub warm_file: PathBuf,
    /// Evaluates canary `analysis` queries; without one, a canary that lists any fails its
    /// step with "no monitoring store to query".
    pub analysis: Option<Arc<dyn analysis::AnalysisQuerier>>,
}

/// Plans, deploys and rolls back revisions for one environment.
pub struct Engine {
    env: String,
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    proxy: Proxy,
    sink: Arc<dyn EventSink>,
    edges: EdgePorts,
    /// Held by the one deployment (deploy, up, rollback, down) that may run at a time.
    deploy_lock: tokio::sync::Mutex<()>,
    /// What holds `deploy_lock`, for `status` and for the message a second deploy gets.
    current: Mutex<Option<DeployInProgress>>,
    routing: Mutex<Routing>,
    /// Where the warm pool of `routing` is written whenever it changes.
    warm_store: WarmStore,
    analysis: Option<Arc<dyn analysis::AnalysisQuerier>>,
    /// Where secret values come from; without one, no secret is injected.
    secrets: std::sync::OnceLock<Arc<dyn SecretValues>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("env", &self.env).finish()
    }
}

/// Progress lines of a deployment, sent as they happen.
pub type Progress = mpsc::UnboundedSender<String>;

pub(crate) fn say(progress: &Option<Progress>, text: impl Into<String>) {
    let text = text.into();
    tracing::info!("{text}");
    if let Some(p) = progress {
        let _ = p.send(text);
    }
}

/// Why a read of the engine's state failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the revision store: {0}")]
pub struct StateError(#[from] pub tandem_store::StoreError);

/// Clears [`Engine::current`] when a deployment ends, however it ends.
pub(crate) struct LockGuard<'a> {
    engine: &'a Engine,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        *self.engine.current.lock().expect("current lock") = None;
    }
}

// === impl Engine ===

impl Engine {
    pub fn new(
        config: EngineConfig,
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        proxy: Proxy,
        sink: Arc<dyn EventSink>,
    ) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            env: config.env.clone(),
            store,
            runtime,
            proxy,
            sink,
            edges: EdgePorts::load(config.edges_file),
            deploy_lock: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            routing: Mutex::new(Routing::default()),
            warm_store: WarmStore::new(config.warm_file),
            analysis: config.analysis,
            secrets: std::sync::OnceLock::new(),
        });
        // Keep the proxy's backends in line with health changes.
        let weak = Arc::downgrade(&engine);
        let changed = engine.runtime.changed();
        tokio::spawn(async move {
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match weak.upgrade() {
                    Some(engine) => engine.update_backends(),
                    None => return,
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
        // Stop warm instances whose time is up.
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(engine) = weak.upgrade() else { return };
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = {
                    let mut routing = engine.routing.lock().expect("routing lock");
                    let mut out = Vec::new();
                    for list in routing.warm.values_mut() {
                        list.retain(|w| {
                            if w.until <= now {
                                out.push(w.id.clone());
                                false
                            } else {
                                true
                            }
                        });
                    }
                    out
                };
                if !expired.is_empty() {
                    engine.save_warm();
                }
                for id in expired {
                    tracing::info!("{id}: keep_warm is over; stopping it");
                    let _ = engine.runtime.stop(&id).await;
                }
            }
        });
        engine
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Points every listener at the healthy instances that take its service's traffic, and
    /// writes the warm pool down when it changed. Every change of routing ends here (a
    /// switch, a retirement into the warm pool, a rollback that takes warm instances), so
    /// the file follows the pool without each of them saving it.
    pub(crate) fn update_backends(&self) {
        self.routing
            .lock()
            .expect("routing lock")
            .apply(&self.proxy, &self.runtime);
        self.save_warm();
    }

    /// Writes the warm pool to its file when it changed since the last write.
    pub(crate) fn save_warm(&self) {
        self.warm_store
            .save(|| self.routing.lock().expect("routing lock").warm.clone());
    }

    /// Takes the deploy lock, or says who holds it.
    pub(crate) fn try_lock(
        &self,
        kind: DeploymentKind,
        who: &str,
    ) -> Result<LockGuard<'_>, String> {
        match self.deploy_lock.try_lock() {
            Ok(guard) => {
                *self.current.lock().expect("current lock") = Some(DeployInProgress {
                    kind,
                    revision: None,
                    who: who.to_string(),
                    started_ms: now_ms(),
                });
                Ok(LockGuard {
                    engine: self,
                    _guard: guard,
                })
            }
            Err(_) => {
                let current = self.current.lock().expect("current lock").clone();
                Err(match current {
                    Some(c) => format!(
                        "a {} {}by {} has been running for {}s in {}; wait for it to finish (`tandem status` shows it)",
                        c.kind.as_str(),
                        c.revision
                            .map(|r| format!("of revision {r} "))
                            .unwrap_or_default(),
                        c.who,
                        (now_ms() - c.started_ms) / 1000,
                        self.env
                    ),
                    None => format!(
                        "another deployment is running in {}; wait for it to finish",
                        self.env
                    ),
                })
            }
        }
    }

    pub(crate) fn set_current_revision(&self, revision: u64) {
        if let Some(c) = self.current.lock().expect("current lock").as_mut() {
            c.revision = Some(revision);
        }
    }

    /// The deployment holding the lock, if any.
    pub fn deploying(&self) -> Option<DeployInProgress> {
        self.current.lock().expect("current lock").clone()
    }

    /// What deploying `system` would do now.
    pub fn plan(&self, system: &System) -> Result<Plan, StateError> {
        let live = self.store.live(&self.env)?;
        if let Err(e) = self.edges.ensure(system) {
            tracing::warn!("cannot save edge ports: {e}");
        }
        Ok(self.plan_against(system, live.as_ref()))
    }

    pub(crate) fn plan_against(&self, system: &System, live: Option<&Revision>) -> Plan {
        let hash = tandem_spec::content_hash(system);
        let changes = match live {
            Some(l) => plan::field_changes(&l.system, system),
            None => plan::field_changes_from_nothing(system),
        };
        let warm = self.routing.lock().expect("routing lock").warm_ids();
        let running: BTreeMap<String, Vec<(String, u32, String)>> = self
            .runtime
            .services()
            .into_iter()
            .map(|s| {
                let inst = self
                    .runtime
                    .instances_of(&s)
                    .into_iter()
                    .filter(|(id, _, _)| !warm.contains(id))
                    .collect();
                (s, inst)
            })
            .collect();
        let services = plan_services(system, live.map(|l| &l.system), &running, &self.edges);
        Plan {
            env: self.env.clone(),
            live_revision: live.map(|l| l.number),
            same_as_live: live.is_some_and(|l| l.hash == hash),
            hash,
            changes,
            services,
        }
    }

    /// Gives the engine the environment's secret store (once, when the server starts).
    pub fn set_secrets(&self, secrets: Arc<dyn SecretValues>) {
        let _ = self.secrets.set(secrets);
    }

    /// What each service's instances are started with: [`desired_templates`] plus the
    /// current value of each of its secrets. The values go in after the template hash is
    /// made, which holds only the keyed fingerprints the revision carries: an instance's
    /// hash (in its meta.json and in `status`) never depends on a value directly. A secret
    /// whose value is gone (removed after its revision was deployed) is left out; a
    /// `${NAME}` that needs it then stops the launch.
    pub(crate) fn templates(&self, system: &System) -> BTreeMap<String, ServiceTemplate> {
        let mut templates = desired_templates(system, &self.env, &self.edges);
        if let Some(secrets) = self.secrets.get() {
            for template in templates.values_mut() {
                for name in &template.service.secrets {
                    if let Some(value) = secrets.value(name) {
                        template.env.insert(name.clone(), value);
                    }
                }
            }
        }
        templates
    }

    /// Service `name`'s working folder and environment as an instance of `system` (the live
    /// revision's) is started with: [`Engine::templates`], so declared `env`, the injected
    /// variables and the current secret values, with `${VAR}` not yet interpolated and no
    /// `PORT`. `None` when `system` has no such service. For `tandem exec`.
    pub fn service_environment(
        &self,
        system: &System,
        name: &str,
    ) -> Option<(PathBuf, BTreeMap<String, String>)> {
        let template = self.templates(system).remove(name)?;
        Some((template.service.cwd.clone().into(), template.env))
    }

    /// Opens (or moves) every listener `system` needs: each service's public port (on its
    /// address, over TLS when it has `tls`) and one edge listener per dependency (plain, on
    /// loopback), and gives the proxy each service's limits (its `proxy` table). Fails,
    /// before anything starts, when a port is held by another program or a certificate and
    /// key do not load.
    pub(crate) async fn open_listeners(&self, system: &System) -> Result<(), String> {
        if let Err(e) = self.edges.ensure(system) {
            return Err(format!("cannot save the edge ports: {e}"));
        }
        let current: Vec<(ListenerKey, SocketAddr)> = self
            .proxy
            .listeners()
            .into_iter()
            .map(|(k, a, _)| (k, a))
            .collect();
        let mut wanted: Vec<(ListenerKey, SocketAddr, ProxyProtocol, Option<ServerTls>)> =
            Vec::new();
        for (name, service) in &system.service {
            let protocol = proxy_protocol(service.protocol);
            if let Some(port) = service.port {
                let tls = match &service.tls {
                    Some(tls) => Some(load_tls(name, tls)?),
                    None => None,
                };
                wanted.push((ListenerKey::public(name), port.addr(), protocol, tls));
            }
        }
        for (caller, callee, port) in self.edges.edges_of(system) {
            let protocol = proxy_protocol(system.service[&callee].protocol);
            wanted.push((
                ListenerKey::edge(&caller, &callee),
                SocketAddr::from(([127, 0, 0, 1], port)),
                protocol,
                None,
            ));
        }
        // Sockets a previous server left with the port holder and this system does not
        // want (a port that moved or went while no server ran) are let go first, so that
        // they neither stand in the way of a new address nor stay open.
        let wanted_addrs: Vec<SocketAddr> = wanted.iter().map(|(_, a, _, _)| *a).collect();
        self.proxy.release_unused(&wanted_addrs);
        let held: Vec<SocketAddr> = current
            .iter()
            .map(|(_, a)| *a)
            .chain(self.proxy.held_addresses())
            .collect();
        // Check every new port first, so nothing is half-opened when one is taken. A port
        // one of our listeners holds (at this address, or on the same port at a clashing
        // one, such as 127.0.0.1:80 moving to 0.0.0.0:80), or that the port holder keeps
        // for us, is the proxy's to take or move.
        for (key, addr, _, _) in &wanted {
            let held_by_us = held.iter().any(|a| tandem_spec::addresses_clash(*a, *addr));
            if held_by_us {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(addr) {
                return Err(match &key.caller {
                    None if e.kind() == std::io::ErrorKind::AddrNotAvailable => format!(
                        "service '{}' cannot listen on {addr}: that address does not belong to this machine ({e}); change `port` to one of its addresses, or \"0.0.0.0:{}\" for all of them",
                        key.service,
                        addr.port()
                    ),
                    None => format!(
                        "port {} of service '{}' is already in use by another program ({e}); stop that program or change `port`",
                        addr.port(),
                        key.service
                    ),
                    Some(caller) => format!(
                        "the edge port {} of {caller} -> {} is already in use by another program ({e}); stop that program, or delete edges.json in the data directory to pick new edge ports",
                        addr.port(),
                        key.service
                    ),
                });
            }
        }
        self.set_proxy_limits(system);
        for (key, addr, protocol, tls) in wanted {
            let label = match &key.caller {
                None => format!("port {} of service '{}'", addr, key.service),
                Some(c) => format!("edge {c} -> {} on port {}", key.service, addr.port()),
            };
            self.proxy
                .listen(key, addr, protocol, tls)
                .await
                .map_err(|e| format!("cannot open {label}: {e}"))?;
        }
        Ok(())
    }

    /// Gives the proxy each service's limits: its `proxy` table over the proxy's defaults. They
    /// apply to the next request or connection of every listener of the service, open
    /// connections included, and need no new instances (see `plan::desired_templates`).
    fn set_proxy_limits(&self, system: &System) {
        let defaults = self.proxy.config().service_limits();
        for (name, service) in &system.service {
            let limits = service_limits(&service.proxy, &defaults);
            self.proxy.set_service_limits(name, limits);
        }
    }

    /// Closes the listeners `system` does not need, and sets the limits of those it keeps
    /// (after a failed deploy, `system` is the live one again, and so are its limits).
    pub(crate) fn close_unneeded_listeners(&self, system: &System) {
        self.set_proxy_limits(system);
        let edges: Vec<(String, String)> = self
            .edges
            .edges_of(system)
            .into_iter()
            .map(|(a, b, _)| (a, b))
            .collect();
        for (key, _, _) in self.proxy.listeners() {
            let needed = match &key.caller {
                None => system
                    .service
                    .get(&key.service)
                    .is_some_and(|s| s.port.is_some()),
                Some(caller) => edges.contains(&(caller.clone(), key.service.clone())),
            };
            if !needed {
                self.proxy.close_listener(&key);
            }
        }
        // And whatever the port holder still keeps from an earlier server.
        self.proxy.release_unused(&[]);
    }

    pub(crate) async fn wait_dependency(&self, dep: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + DEPENDENCY_WAIT;
        let changed = self.runtime.changed();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let serving = self.routing.lock().expect("routing lock").serving(dep);
            let instances: Vec<_> = serving
                .iter()
                .filter_map(|id| self.runtime.status(id))
                .collect();
            if instances.iter().any(|s| s.state == InstanceState::Healthy) {
                return Ok(());
            }
            if instances.is_empty() {
                return Err(format!("its dependency '{dep}' has no instance"));
            }
            if let Some(parked) = instances
                .iter()
                .find(|s| matches!(s.state, InstanceState::CrashLoop | InstanceState::Exited))
            {
                return Err(format!(
                    "its dependency '{dep}' is not running ({}: {})",
                    parked.state.as_str(),
                    parked.reason.clone().unwrap_or_default()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "its dependency '{dep}' did not become healthy within {}s",
                    DEPENDENCY_WAIT.as_secs()
                ));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// After a server restart: re-attach to the running instances, settle an interrupted
    /// deployment (its revision is failed; its instances stop; traffic goes to the live
    /// revision), keep warm what the previous server kept warm (while its `keep_warm` lasts),
    /// and start what is missing, unless the environment was taken down on purpose
    /// (`start_missing` false: after `tandem down` nothing starts again until the next
    /// deploy).
    pub async fn recover(
        &self,
        progress: Option<Progress>,
        start_missing: bool,
    ) -> Result<(), StateError> {
        let _guard = self.deploy_lock.lock().await;
        // Read before anything could write the (still empty) pool over it.
        let kept_warm = self.read_warm_pool();
        for number in self.store.recover_interrupted(&self.env)? {
            self.emit(
                EventKind::ApplyFailed,
                None,
                Some(number),
                None,
                format!("revision {number} failed: the server stopped during the apply"),
            );
        }
        self.store.recover_interrupted_deployments(&self.env)?;
        let reattached = self.runtime.reattach_all();
        say(
            &progress,
            format!("re-attached to {} instance(s)", reattached.len()),
        );
        let live = match self.store.live(&self.env)? {
            Some(live) if start_missing => live,
            // Nothing was ever live (whatever runs belongs to a failed first apply), or the
            // environment was taken down: nothing should run.
            _ => {
                // No port of an earlier server is served either.
                self.proxy.release_unused(&[]);
                join_all(reattached.iter().map(|r| self.runtime.stop(&r.id))).await;
                self.routing.lock().expect("routing lock").warm.clear();
                self.save_warm();
                return Ok(());
            }
        };
        if let Err(e) = self.open_listeners(&live.system).await {
            say(&progress, format!("recovery: {e}"));
        }
        // Keep warm what is still warm; route each service to the instances that run its live
        // definition; stop the rest.
        let (warm, given_up) = self.restore_warm(kept_warm, &reattached, &live.system);
        let templates = self.templates(&live.system);
        let mut strays = given_up.clone();
        {
            let mut routing = self.routing.lock().expect("routing lock");
            routing.weights.clear();
            routing.warm = warm;
            let warm_ids = routing.warm_ids();
            for service in self.runtime.services() {
                let Some(spec) = live.system.service.get(&service) else {
                    strays.extend(
                        self.runtime
                            .instances_of(&service)
                            .into_iter()
                            .map(|(id, _, _)| id)
                            .filter(|id| !given_up.contains(id)),
                    );
                    continue;
                };
                let mut by_index: BTreeMap<u32, String> = BTreeMap::new();
                for (id, index, hash) in self.runtime.instances_of(&service) {
                    if warm_ids.contains(&id) || given_up.contains(&id) {
                        continue;
                    }
                    if hash == templates[&service].hash
                        && index < spec.replicas
                        && !by_index.contains_key(&index)
                    {
                        by_index.insert(index, id);
                    } else {
                        strays.push(id);
                    }
                }
                let ids: Vec<String> = by_index.into_values().collect();
                routing.all_to(&service, &ids);
            }
        }
        self.update_backends();
        join_all(strays.iter().map(|id| self.runtime.stop(id))).await;
        // Start what is missing (and replace what no longer matches), without canary steps.
        let plan = self.plan_against(&live.system, Some(&live));
        let mut run = deploy::Run::default();
        let options = DeployOptions {
            force: true,
            plain: true,
        };
        if let Err(failure) = self
            .roll_out(
                &live.system,
                live.number,
                &plan.services,
                &mut run,
                None,
                &options,
                &progress,
            )
            .await
        {
            say(
                &progress,
                format!("recovery could not start everything: {}", failure.message),
            );
        }
        self.retire(&live.system, run, &progress).await;
        self.close_unneeded_listeners(&live.system);
        Ok(())
    }

    /// Stops every instance, dependents first, and closes every listener.
    pub async fn down(&self, progress: Option<Progress>) -> Result<(), String> {
        let _guard = self
            .try_lock(DeploymentKind::Down, "tandem down")
            .map_err(|busy| format!("not stopping anything: {busy}"))?;
        let live = self.store.live(&self.env).map_err(|e| e.to_string())?;
        let mut order: Vec<String> = live
            .as_ref()
            .map(|l| {
                tandem_spec::start_order(&l.system)
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        order.reverse();
        for service in self.runtime.services() {
            if !order.contains(&service) {
                order.insert(0, service);
            }
        }
        for (key, _, _) in self.proxy.listeners() {
            self.proxy.close_listener(&key);
        }
        self.proxy.release_unused(&[]);
        {
            let mut routing = self.routing.lock().expect("routing lock");
            routing.weights.clear();
            routing.warm.clear();
        }
        self.save_warm();
        for service in order {
            let ids: Vec<String> = self
                .runtime
                .instances_of(&service)
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            say(
                &progress,
                format!("{service}: stopping {} instance(s)", ids.len()),
            );
            join_all(ids.iter().map(|id| self.runtime.stop(id))).await;
        }
        self.runtime.remove_cgroup_root();
        Ok(())
    }

    /// `tandem restart SERVICE`: every instance of it, including crash-looped ones.
    pub fn restart(&self, service: &str) -> Result<usize, String> {
        let ids = self.runtime.instances_of(service);
        if ids.is_empty() {
            return Err(format!(
                "service '{service}' has no instances in {}",
                self.env
            ));
        }
        for (id, _, _) in &ids {
            self.runtime.restart(id).map_err(|e| e.to_string())?;
        }
        self.emit(
            EventKind::InstanceRestarting,
            Some(service.to_string()),
            None,
            None,
            format!("restart of {service} requested"),
        );
        Ok(ids.len())
    }

    /// Every service of the live revision (and any other that still runs), with instances,
    /// their share of traffic and whether they are kept warm.
    pub fn services_status(&self) -> Result<(Option<u64>, Vec<ServiceStatus>), StateError> {
        let live = self.store.live(&self.env)?;
        let mut all = self.runtime.list();
        all.sort_by(|a, b| (&a.service, a.index, &a.id).cmp(&(&b.service, b.index, &b.id)));
        {
            let routing = self.routing.lock().expect("routing lock");
            let now = tokio::time::Instant::now();
            for i in &mut all {
                if let Some(weights) = routing.weights.get(&i.service) {
                    let total: u32 = weights.values().sum();
                    if let Some(w) = weights.get(&i.id).filter(|_| total > 0) {
                        i.traffic_pct = Some(f64::from(*w) * 100.0 / f64::from(total));
                    }
                }
                if let Some(w) = routing
                    .warm
                    .get(&i.service)
                    .and_then(|l| l.iter().find(|w| w.id == i.id))
                {
                    let left = w.until.saturating_duration_since(now);
                    i.warm_until_ms = Some(now_ms() + left.as_millis() as i64);
                }
            }
        }
        let mut services: BTreeMap<String, ServiceStatus> = BTreeMap::new();
        if let Some(l) = &live {
            for (name, s) in &l.system.service {
                services.insert(
                    name.clone(),
                    ServiceStatus {
                        name: name.clone(),
                        port: s.port.map(|p| p.port),
                        address: s
                            .port
                            .filter(|p| !p.is_default_ip())
                            .map(|p| p.addr().to_string()),
                        tls: s.tls.is_some(),
                        replicas: s.replicas,
                        instances: Vec::new(),
                    },
                );
            }
        }
        for instance in all {
            services
                .entry(instance.service.clone())
                .or_insert_with(|| ServiceStatus {
                    name: instance.service.clone(),
                    port: None,
                    address: None,
                    tls: false,
                    replicas: 0,
                    instances: Vec::new(),
                })
                .instances
                .push(instance);
        }
        Ok((live.map(|l| l.number), services.into_values().collect()))
    }

    /// The last `n` lines an instance wrote.
    pub(crate) fn log_tail(&self, service: &str, id: &str, n: usize) -> Vec<String> {
        let path = self
            .runtime
            .logs_dir()
            .join(service)
            .join(format!("{id}.log"));
        match tandem_supervisor::logfile::read_all(&path) {
            Ok(lines) => {
                let skip = lines.len().saturating_sub(n);
                lines.into_iter().skip(skip).map(|l| l.text).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    pub(crate) fn emit(
        &self,
        kind: EventKind,
        service: Option<String>,
        revision: Option<u64>,
        who: Option<String>,
        message: String,
    ) {
        self.sink.emit(Event {
            time_ms: now_ms(),
            env: self.env.clone(),
            kind,
            service,
            instance: None,
            revision,
            who,
            message,
        });
    }
}

/// Loads the certificate and key of service `name`'s public port, warning when the key is
/// readable by others (a warning: the deploy goes on).
fn load_tls(name: &str, tls: &tandem_spec::Tls) -> Result<ServerTls, String> {
    let (cert, key) = (
        std::path::Path::new(&tls.cert),
        std::path::Path::new(&tls.key),
    );
    if let Some(warning) = tandem_spec::key_permission_warning(name, key) {
        tracing::warn!("{warning}");
    }
    ServerTls::load(cert, key).map_err(|e| format!("service '{name}' cannot serve HTTPS: {e}"))
}

/// A service's `proxy` table as the proxy's limits: each key left out keeps `defaults`.
pub(crate) fn service_limits(
    settings: &tandem_spec::ProxySettings,
    defaults: &ServiceLimits,
) -> ServiceLimits {
    ServiceLimits {
        header_read_timeout: settings
            .idle_timeout
            .map_or(defaults.header_read_timeout, |d| d.0),
        max_header_bytes: settings
            .max_request_header
            .map_or(defaults.max_header_bytes, |s| {
                usize::try_from(s.0).unwrap_or(usize::MAX)
            }),
        max_body_bytes: settings
            .max_request_body
            .map(|s| s.0)
            .or(defaults.max_body_bytes),
        connect_timeout: settings
            .connect_timeout
            .map_or(defaults.connect_timeout, |d| d.0),
        response_timeout: settings
            .response_timeout
            .map_or(defaults.response_timeout, |d| d.0),
    }
}

pub(crate) fn proxy_protocol(p: tandem_spec::Protocol) -> ProxyProtocol {
    match p {
        tandem_spec::Protocol::Http => ProxyProtocol::Http,
        tandem_spec::Protocol::Tcp => ProxyProtocol::Tcp,
    }
}

pub(crate) fn instance_request(
    template: &ServiceTemplate,
    name: &str,
    revision: u64,
    index: u32,
) -> InstanceRequest {
    let s = &template.service;
    InstanceRequest {
        service: name.to_string(),
        revision,
        index,
        template_hash: template.hash.clone(),
        run: s.run.clone(),
        cwd: s.cwd.clone().into(),
        env: template.env.clone(),
        health: s.health.clone(),
        limits: tandem_supervisor::launch::ResolvedLimits {
            memory_bytes: s.limits.memory.map(|m| m.0),
            cpu_cores: s.limits.cpu.map(|c| c.0),
            pids: s.limits.pids,
        },
        stop: s.stop.clone(),
        restart: s.restart,
    }
}
