//! The engine turns a resolved system into running instances and records the result.
//!
//! One operation does the work: [`Engine::apply`] compares the wanted system with what runs,
//! starts what is new or changed beside what runs (layer by layer in dependency order, each
//! layer waiting for its instances to pass their health check once), and only when every new
//! instance is healthy marks the revision live, moves each service's port to the new
//! instances and stops the old ones. A failure anywhere stops what this apply started, marks
//! the revision failed with the reason, and leaves the previous revision running untouched.
//! The same comparison, run against the live revision, is how a restarted server recovers
//! ([`Engine::recover`]): it keeps instances that match, stops leftovers of an interrupted
//! apply, and starts what is missing.

pub mod plan;

use futures_util::future::join_all;
use plan::{ServiceTemplate, desired_templates, plan_services};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::{
    ApplyResult, Event, EventKind, EventSink, InstanceState, Plan, Provenance, Revision,
    ServiceAction, ServicePlan, ServiceStatus, now_ms,
};
use tandem_proxy::Proxy;
use tandem_spec::{Release, System};
use tandem_store::Store;
use tandem_supervisor::runtime::{InstanceRequest, Runtime};
use tokio::sync::mpsc;

/// How long an unchanged dependency may take to become healthy before dependents start.
const DEPENDENCY_WAIT: Duration = Duration::from_secs(60);

/// Why an apply failed; the message names the service and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{message}")]
    Failed {
        message: String,
        revision: Option<u64>,
    },
    #[error("cannot read or write the revision store: {0}")]
    Store(#[from] tandem_store::StoreError),
}

impl ApplyError {
    pub fn revision(&self) -> Option<u64> {
        match self {
            ApplyError::Failed { revision, .. } => *revision,
            ApplyError::Store(_) => None,
        }
    }
}

/// Which instances take a service's traffic.
#[derive(Default)]
struct Routing {
    /// service -> ids of the instances its port forwards to (when healthy).
    serving: BTreeMap<String, BTreeSet<String>>,
    /// service -> the port the proxy serves for it.
    ports: BTreeMap<String, u16>,
}

/// Plans and applies revisions for one environment.
pub struct Engine {
    env: String,
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    proxy: Proxy,
    sink: Arc<dyn EventSink>,
    apply_lock: tokio::sync::Mutex<()>,
    routing: Mutex<Routing>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("env", &self.env).finish()
    }
}

/// Progress lines of an apply, sent as they happen.
pub type Progress = mpsc::UnboundedSender<String>;

fn say(progress: &Option<Progress>, text: impl Into<String>) {
    let text = text.into();
    tracing::info!("{text}");
    if let Some(p) = progress {
        let _ = p.send(text);
    }
}

// === impl Engine ===

impl Engine {
    pub fn new(
        env: &str,
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        proxy: Proxy,
        sink: Arc<dyn EventSink>,
    ) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            env: env.to_string(),
            store,
            runtime,
            proxy,
            sink,
            apply_lock: tokio::sync::Mutex::new(()),
            routing: Mutex::new(Routing::default()),
        });
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
        engine
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Points every served port at the healthy instances that serve it.
    fn update_backends(&self) {
        let routing = self.routing.lock().expect("routing lock");
        for (service, ids) in &routing.serving {
            if !routing.ports.contains_key(service) {
                continue;
            }
            let backends: Vec<SocketAddr> = ids
                .iter()
                .filter_map(|id| self.runtime.status(id))
                .filter(|s| s.state == InstanceState::Healthy)
                .map(|s| SocketAddr::from(([127, 0, 0, 1], s.port)))
                .collect();
            self.proxy.set_backends(service, backends);
        }
    }

    /// What applying `system` would do now.
    pub fn plan(&self, system: &System) -> Result<Plan, ApplyError> {
        let live = self.store.live(&self.env)?;
        Ok(self.plan_against(system, live.as_ref()))
    }

    fn plan_against(&self, system: &System, live: Option<&Revision>) -> Plan {
        let hash = tandem_spec::content_hash(system);
        let changes = match live {
            Some(l) => plan::field_changes(&l.system, system),
            None => plan::field_changes_from_nothing(system),
        };
        let running: BTreeMap<String, Vec<(String, u32, String)>> = self
            .runtime
            .services()
            .into_iter()
            .map(|s| {
                let inst = self.runtime.instances_of(&s);
                (s, inst)
            })
            .collect();
        let services = plan_services(system, live.map(|l| &l.system), &running);
        Plan {
            env: self.env.clone(),
            live_revision: live.map(|l| l.number),
            same_as_live: live.is_some_and(|l| l.hash == hash),
            hash,
            changes,
            services,
        }
    }

    /// Applies `system` as a new revision (or restores the live one when it is the same).
    pub async fn apply(
        &self,
        system: System,
        provenance: Provenance,
        progress: Option<Progress>,
    ) -> Result<ApplyResult, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let started = tokio::time::Instant::now();
        let live = self.store.live(&self.env)?;
        let plan = self.plan_against(&system, live.as_ref());
        if plan.same_as_live && !plan.services.iter().any(|s| s.action.touches()) {
            let number = live.as_ref().map(|l| l.number).unwrap_or(0);
            say(
                &progress,
                format!("no changes: revision {number} is live and running"),
            );
            return Ok(ApplyResult {
                revision: number,
                new_revision: false,
                services: plan.services,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        let (number, new_revision) = match (&live, plan.same_as_live) {
            (Some(l), true) => (l.number, false),
            _ => {
                let rev = self
                    .store
                    .begin_revision(&self.env, &system, &plan.hash, &provenance)?;
                (rev.number, true)
            }
        };
        self.emit(
            EventKind::ApplyStarted,
            None,
            Some(number),
            Some(provenance.author.clone()),
            if new_revision {
                format!("applying revision {number}")
            } else {
                format!("restoring revision {number}")
            },
        );
        say(
            &progress,
            if new_revision {
                format!("applying revision {number} to {}", self.env)
            } else {
                format!("revision {number} is live; starting what is missing")
            },
        );
        match self
            .execute(&system, number, &plan.services, &progress)
            .await
        {
            Ok(started_ids) => {
                if new_revision {
                    self.store.mark_live(&self.env, number)?;
                }
                self.switch_over(&system, &plan.services, &started_ids, &progress)
                    .await;
                let ms = started.elapsed().as_millis() as u64;
                self.emit(
                    EventKind::RevisionApplied,
                    None,
                    Some(number),
                    Some(provenance.author.clone()),
                    format!("revision {number} is live ({ms} ms)"),
                );
                Ok(ApplyResult {
                    revision: number,
                    new_revision,
                    services: plan.services,
                    duration_ms: ms,
                })
            }
            Err((message, started_ids, recreated)) => {
                say(&progress, format!("apply failed: {message}"));
                say(
                    &progress,
                    "stopping what this apply started; the previous state keeps running",
                );
                let stops = started_ids.iter().map(|id| self.runtime.stop(id));
                join_all(stops).await;
                self.close_unserved_ports();
                if !recreated.is_empty()
                    && let Some(l) = &live
                {
                    self.restore_services(&l.system, l.number, &recreated, &progress)
                        .await;
                }
                if new_revision {
                    self.store.mark_failed(&self.env, number, &message)?;
                }
                self.emit(
                    EventKind::ApplyFailed,
                    None,
                    Some(number),
                    Some(provenance.author.clone()),
                    format!("revision {number} failed: {message}"),
                );
                Err(ApplyError::Failed {
                    message,
                    revision: new_revision.then_some(number),
                })
            }
        }
    }

    /// Starts new instances layer by layer and waits for each layer's health. On failure
    /// returns the message, the ids started so far, and the services whose old instances a
    /// `recreate` release already stopped.
    async fn execute(
        &self,
        system: &System,
        revision: u64,
        plans: &[ServicePlan],
        progress: &Option<Progress>,
    ) -> Result<Vec<String>, (String, Vec<String>, Vec<String>)> {
        let templates = desired_templates(system, &self.env);
        let actions: BTreeMap<&str, &ServicePlan> =
            plans.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut started: Vec<String> = Vec::new();
        let mut recreated: Vec<String> = Vec::new();

        // Ports first: a port held by another program fails the apply before anything starts.
        for (name, service) in &system.service {
            let Some(port) = service.port else { continue };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let already = self
                .proxy
                .listening()
                .iter()
                .any(|(s, a)| s == name && *a == addr);
            if already {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(addr) {
                let held_by_us = self.proxy.listening().iter().any(|(_, a)| *a == addr);
                if !held_by_us {
                    return Err((
                        format!(
                            "port {port} of service '{name}' is already in use by another program ({e}); stop that program or change `port`"
                        ),
                        started,
                        recreated,
                    ));
                }
            }
        }

        for layer in tandem_spec::start_order(system) {
            let mut waits = Vec::new();
            for name in &layer {
                let Some(plan) = actions.get(name.as_str()) else {
                    continue;
                };
                let template = &templates[name];
                let service = &system.service[name];
                for dep in &service.depends_on {
                    if let Err(e) = self.wait_dependency(dep).await {
                        return Err((
                            format!("service '{name}' cannot start: {e}"),
                            started,
                            recreated,
                        ));
                    }
                }
                let existing = self.runtime.instances_of(name);
                let indexes: Vec<u32> = match &plan.action {
                    ServiceAction::Keep | ServiceAction::Remove => continue,
                    ServiceAction::Start | ServiceAction::Replace => {
                        (0..service.replicas).collect()
                    }
                    ServiceAction::Scale { .. } | ServiceAction::Restore => {
                        let have: BTreeSet<u32> = existing
                            .iter()
                            .filter(|(_, _, t)| *t == template.hash)
                            .map(|(_, i, _)| *i)
                            .collect();
                        (0..service.replicas)
                            .filter(|i| !have.contains(i))
                            .collect()
                    }
                };
                if matches!(plan.action, ServiceAction::Replace)
                    && matches!(service.release, Some(Release::Recreate))
                    && !existing.is_empty()
                {
                    say(
                        progress,
                        format!("{name}: stopping the old instances first (release = recreate)"),
                    );
                    join_all(existing.iter().map(|(id, _, _)| self.runtime.stop(id))).await;
                    recreated.push(name.clone());
                }
                if !indexes.is_empty() {
                    say(
                        progress,
                        format!("{name}: starting {} instance(s)", indexes.len()),
                    );
                }
                for index in indexes {
                    let request = instance_request(template, name, revision, index);
                    match self.runtime.start(request) {
                        Ok(id) => {
                            started.push(id.clone());
                            waits.push((name.clone(), id));
                        }
                        Err(e) => {
                            return Err((format!("service '{name}': {e}"), started, recreated));
                        }
                    }
                }
            }
            let results = join_all(waits.iter().map(|(name, id)| async move {
                let r = self.runtime.wait_ready(id).await;
                (name.clone(), id.clone(), r)
            }))
            .await;
            let mut failure = None;
            for (name, id, result) in results {
                match result {
                    Ok(()) => say(progress, format!("{name}: {id} is healthy")),
                    Err(e) => {
                        if failure.is_none() {
                            let tail = self.log_tail(&name, &id, 8);
                            let mut message = format!("service '{name}': {e}");
                            if !tail.is_empty() {
                                message.push_str("\n  last output:\n");
                                for line in tail {
                                    message.push_str("    ");
                                    message.push_str(&line);
                                    message.push('\n');
                                }
                                message = message.trim_end().to_string();
                            }
                            failure = Some(message);
                        }
                    }
                }
            }
            if let Some(message) = failure {
                return Err((message, started, recreated));
            }
        }
        Ok(started)
    }

    /// After the revision is live: moves traffic to the new instances and stops the old ones,
    /// dependents before their dependencies.
    async fn switch_over(
        &self,
        system: &System,
        plans: &[ServicePlan],
        started: &[String],
        progress: &Option<Progress>,
    ) {
        let templates = desired_templates(system, &self.env);
        let started: BTreeSet<&String> = started.iter().collect();
        let mut to_stop: Vec<(String, String)> = Vec::new();
        {
            for (name, service) in &system.service {
                if let Some(port) = service.port {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    let current = self
                        .proxy
                        .listening()
                        .into_iter()
                        .find(|(s, _)| s == name)
                        .map(|(_, a)| a);
                    if current.is_some_and(|a| a != addr) {
                        self.proxy.close(name);
                    }
                    if current != Some(addr)
                        && let Err(e) = self.proxy.listen(name, addr).await
                    {
                        say(progress, format!("{name}: {e}"));
                    }
                } else if self.proxy.listening().iter().any(|(s, _)| s == name) {
                    self.proxy.close(name);
                }
            }
        }
        {
            let mut routing = self.routing.lock().expect("routing lock");
            routing.serving.clear();
            routing.ports.clear();
            for (name, service) in &system.service {
                let template = &templates[name];
                // One instance per index: the fresh one when an index has two.
                let mut keep: BTreeMap<u32, String> = BTreeMap::new();
                let mut instances = self.runtime.instances_of(name);
                instances.sort_by_key(|(id, _, _)| started.contains(id));
                for (id, index, hash) in instances {
                    if hash == template.hash && index < service.replicas {
                        if let Some(replaced) = keep.insert(index, id) {
                            to_stop.push((name.clone(), replaced));
                        }
                    } else {
                        to_stop.push((name.clone(), id));
                    }
                }
                routing
                    .serving
                    .insert(name.clone(), keep.into_values().collect());
                if let Some(port) = service.port {
                    routing.ports.insert(name.clone(), port);
                }
            }
            for service in self.runtime.services() {
                if !system.service.contains_key(&service) {
                    for (id, _, _) in self.runtime.instances_of(&service) {
                        to_stop.push((service.clone(), id));
                    }
                }
            }
        }
        self.update_backends();
        for (service, _) in self.proxy.listening() {
            if !system.service.contains_key(&service) {
                self.proxy.close(&service);
            }
        }
        // Stop old instances in reverse dependency order, one layer at a time.
        let mut order: Vec<String> = tandem_spec::start_order(system)
            .into_iter()
            .flatten()
            .collect();
        order.reverse();
        let removed: Vec<String> = plans
            .iter()
            .filter(|p| matches!(p.action, ServiceAction::Remove))
            .map(|p| p.name.clone())
            .collect();
        let mut stop_order: Vec<String> = removed;
        stop_order.extend(order);
        for service in stop_order {
            let ids: Vec<String> = to_stop
                .iter()
                .filter(|(s, _)| *s == service)
                .map(|(_, id)| id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            say(
                progress,
                format!("{service}: stopping {} old instance(s)", ids.len()),
            );
            join_all(ids.iter().map(|id| self.runtime.stop(id))).await;
        }
        // Leftovers of services in neither list (should not happen, but never leak).
        let leftovers: Vec<String> = to_stop
            .iter()
            .filter(|(_, id)| self.runtime.status(id).is_some())
            .map(|(_, id)| id.clone())
            .collect();
        join_all(leftovers.iter().map(|id| self.runtime.stop(id))).await;
    }

    /// Restarts services whose old instances a failed `recreate` already stopped.
    async fn restore_services(
        &self,
        system: &System,
        revision: u64,
        services: &[String],
        progress: &Option<Progress>,
    ) {
        let templates = desired_templates(system, &self.env);
        for name in services {
            let (Some(template), Some(service)) = (templates.get(name), system.service.get(name))
            else {
                continue;
            };
            say(
                progress,
                format!("{name}: starting the previous revision's instances again"),
            );
            for index in 0..service.replicas {
                let _ = self
                    .runtime
                    .start(instance_request(template, name, revision, index));
            }
        }
        self.reset_routing(system);
    }

    fn close_unserved_ports(&self) {
        let routing = self.routing.lock().expect("routing lock");
        for (service, _) in self.proxy.listening() {
            if !routing.ports.contains_key(&service) {
                self.proxy.close(&service);
            }
        }
    }

    /// Routes every service of `system` to its instances that match the definition.
    fn reset_routing(&self, system: &System) {
        let templates = desired_templates(system, &self.env);
        let mut routing = self.routing.lock().expect("routing lock");
        routing.serving.clear();
        routing.ports.clear();
        for (name, service) in &system.service {
            let ids = self
                .runtime
                .instances_of(name)
                .into_iter()
                .filter(|(_, _, h)| *h == templates[name].hash)
                .map(|(id, _, _)| id)
                .collect();
            routing.serving.insert(name.clone(), ids);
            if let Some(port) = service.port {
                routing.ports.insert(name.clone(), port);
            }
        }
    }

    async fn wait_dependency(&self, dep: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + DEPENDENCY_WAIT;
        let changed = self.runtime.changed();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let instances: Vec<_> = self
                .runtime
                .instances_of(dep)
                .into_iter()
                .filter_map(|(id, _, _)| self.runtime.status(&id))
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

    /// After a server restart: re-attach to the running instances, finish an interrupted
    /// apply (its revision is failed; its instances stop), and start what is missing, unless
    /// the environment was taken down on purpose (`start_missing` false: after `tandem down`
    /// nothing starts again until the next apply).
    pub async fn recover(
        &self,
        progress: Option<Progress>,
        start_missing: bool,
    ) -> Result<(), ApplyError> {
        let _guard = self.apply_lock.lock().await;
        for number in self.store.recover_interrupted(&self.env)? {
            self.emit(
                EventKind::ApplyFailed,
                None,
                Some(number),
                None,
                format!("revision {number} failed: the server stopped during the apply"),
            );
        }
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
                join_all(reattached.iter().map(|id| self.runtime.stop(id))).await;
                return Ok(());
            }
        };
        self.reset_routing(&live.system);
        let plan = self.plan_against(&live.system, Some(&live));
        if let Err((message, _, _)) = self
            .execute(&live.system, live.number, &plan.services, &progress)
            .await
        {
            say(
                &progress,
                format!("recovery could not start everything: {message}"),
            );
        }
        let empty: Vec<String> = Vec::new();
        self.switch_over(&live.system, &plan.services, &empty, &progress)
            .await;
        Ok(())
    }

    /// Stops every instance, dependents first, and closes every port.
    pub async fn down(&self, progress: Option<Progress>) -> Result<(), ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let live = self.store.live(&self.env)?;
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
        for (service, _) in self.proxy.listening() {
            self.proxy.close(&service);
        }
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
        let mut routing = self.routing.lock().expect("routing lock");
        routing.serving.clear();
        routing.ports.clear();
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

    /// Every service of the live revision (and any other that still runs), with instances.
    pub fn services_status(&self) -> Result<(Option<u64>, Vec<ServiceStatus>), ApplyError> {
        let live = self.store.live(&self.env)?;
        let mut all = self.runtime.list();
        all.sort_by(|a, b| (&a.service, a.index, &a.id).cmp(&(&b.service, b.index, &b.id)));
        let mut services: BTreeMap<String, ServiceStatus> = BTreeMap::new();
        if let Some(l) = &live {
            for (name, s) in &l.system.service {
                services.insert(
                    name.clone(),
                    ServiceStatus {
                        name: name.clone(),
                        port: s.port,
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
                    replicas: 0,
                    instances: Vec::new(),
                })
                .instances
                .push(instance);
        }
        Ok((live.map(|l| l.number), services.into_values().collect()))
    }

    /// The last `n` lines an instance wrote.
    fn log_tail(&self, service: &str, id: &str, n: usize) -> Vec<String> {
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

    fn emit(
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

fn instance_request(
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
