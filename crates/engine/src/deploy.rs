//! Deploying a revision: each changed service, in dependency order, through its release
//! strategy, with every step, traffic shift and gate result recorded.
//!
//! - `recreate` stops the old instances, then starts the new ones.
//! - `blue-green` (and a service without `release`) starts the new instances beside the old,
//!   waits for their health, moves all traffic at once; the old ones drain and stop, or with
//!   `keep_warm` stay running without traffic so a rollback is a switch.
//! - `canary` moves traffic in `steps`, holds each for `step_time` and judges the new
//!   revision on the proxy's own figures for that window (see [`judge`]) and on its
//!   `analysis` queries over the monitoring store (see [`crate::analysis`]); a breach puts
//!   all traffic back on the old instances and stops the new ones.
//!
//! Old instances of every service keep running until the whole revision is live, so a
//! failure in a later service still finds the earlier services' old instances there to take
//! their traffic back.

use crate::routing::{DRAIN_TIMEOUT, Warm};
use crate::{Engine, Progress, instance_request, say};
use futures_util::future::join_all;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use tandem_api::{
    ApplyResult, DeployStep, DeploymentKind, DeploymentOutcome, EventKind, GateResult, Provenance,
    Revision, ServiceAction, ServicePlan, now_ms,
};
use tandem_proxy::{LatencyHistogram, RevisionStats};
use tandem_spec::{Release, System};

/// Requests the new revision must get in a canary step before it is judged.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// How long old instances stay warm after a blue-green or canary switch, unless `keep_warm`
/// says otherwise. A service without `release` keeps nothing warm.
pub const DEFAULT_KEEP_WARM: Duration = Duration::from_secs(300);
/// A canary step short of `min_requests` is held this many `step_time`s in all before it
/// goes on unjudged.
const MAX_HOLDS: u32 = 3;
/// "Not clearly worse than the old revision": the new error rate may be at most twice the
/// old one or one percentage point above it, whichever allows more.
pub const ERROR_RATE_FACTOR: f64 = 2.0;
pub const ERROR_RATE_MARGIN: f64 = 0.01;
/// ... and the new p99 at most 1.5 times the old one or 25 ms above it.
pub const P99_FACTOR: f64 = 1.5;
pub const P99_MARGIN: Duration = Duration::from_millis(25);
/// Requests each side needs in a window before their p99s are compared.
pub const MIN_REQUESTS_FOR_P99: u64 = 100;

/// How a deployment is run.
#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// Deploy even content that was rolled back before.
    pub force: bool,
    /// No strategies: start, wait for health, switch (recovery after a restart).
    pub plain: bool,
}

/// Why a deployment did not make its revision live.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another deployment holds the lock.
    #[error("{0}")]
    Busy(String),
    /// A gate failed and traffic went back to the previous revision by itself.
    #[error("{message}")]
    RolledBack { message: String, revision: u64 },
    #[error("{message}")]
    Failed {
        message: String,
        revision: Option<u64>,
    },
    #[error("cannot read or write the revision store: {0}")]
    Store(#[from] tandem_store::StoreError),
}

impl DeployError {
    pub fn revision(&self) -> Option<u64> {
        match self {
            DeployError::RolledBack { revision, .. } => Some(*revision),
            DeployError::Failed { revision, .. } => *revision,
            _ => None,
        }
    }
}

/// What a deployment has done so far, to finish it or to undo it.
#[derive(Default, Debug)]
pub(crate) struct Run {
    /// Instances this deployment started.
    pub(crate) started: Vec<String>,
    /// Services whose traffic moved, with the instances that had it before.
    pub(crate) switched: Vec<(String, Vec<String>)>,
    /// Services whose old instances a `recreate` stopped before the new ones started.
    pub(crate) recreated: Vec<String>,
    /// Old instances to retire once the revision is live, with how long to keep them warm.
    pub(crate) retire: Vec<(String, Vec<String>, Duration)>,
    /// Services this deployment started or replaced by a deploy (not a rollback or a
    /// recovery), in the order they went: their `post_deploy` hooks run once it is live.
    pub(crate) deployed: Vec<String>,
}

/// Why a roll-out stopped.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// A canary gate failed (the deployment is "rolled back", not "failed").
    pub(crate) by_gate: bool,
}

fn failure(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        by_gate: false,
    }
}

// === impl Engine ===

impl Engine {
    /// Deploys `system` as a new revision (or restores what is missing of the live one when
    /// the file equals it).
    pub async fn deploy(
        &self,
        system: System,
        provenance: Provenance,
        options: DeployOptions,
        progress: Option<Progress>,
    ) -> Result<ApplyResult, DeployError> {
        let guard = self
            .try_lock(DeploymentKind::Deploy, &provenance.author)
            .map_err(DeployError::Busy)?;
        let started = tokio::time::Instant::now();
        let live = self.store.live(&self.env)?;
        if let Err(e) = self.edges.ensure(&system) {
            return Err(DeployError::Failed {
                message: format!("cannot save edge ports: {e}"),
                revision: None,
            });
        }
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
        if !options.force
            && !plan.same_as_live
            && let Some(old) = self.store.rolled_back_with_hash(&self.env, &plan.hash)?
        {
            return Err(DeployError::Failed {
                message: format!(
                    "revision {} with exactly this content was rolled back ({}); change the file, or deploy it again with --force",
                    old.number,
                    old.reason.unwrap_or_else(|| "no reason recorded".into())
                ),
                revision: None,
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
        self.set_current_revision(number);
        let deployment = self.store.begin_deployment(
            &self.env,
            DeploymentKind::Deploy,
            number,
            live.as_ref().map(|l| l.number),
            &provenance.author,
        )?;
        self.emit(
            EventKind::ApplyStarted,
            None,
            Some(number),
            Some(provenance.author.clone()),
            if new_revision {
                format!("deploying revision {number}")
            } else {
                format!("restoring revision {number}")
            },
        );
        self.record(
            Some(deployment),
            None,
            &progress,
            if new_revision {
                match &live {
                    Some(l) => format!(
                        "deploying revision {number} to {} (live: {})",
                        self.env, l.number
                    ),
                    None => format!("deploying revision {number} to {}", self.env),
                }
            } else {
                format!("revision {number} is live; starting what is missing")
            },
            None,
            Vec::new(),
        );
        let mut run = Run::default();
        let result = self
            .roll_out(
                &system,
                number,
                &plan.services,
                &mut run,
                Some(deployment),
                &options,
                &progress,
            )
            .await;
        match result {
            Ok(()) => {
                if new_revision {
                    self.store.mark_live(&self.env, number)?;
                }
                let deployed = std::mem::take(&mut run.deployed);
                self.retire(&system, run, &progress).await;
                self.close_unneeded_listeners(&system);
                self.run_post_deploy_hooks(&system, number, &deployed, Some(deployment), &progress)
                    .await;
                let ms = started.elapsed().as_millis() as u64;
                self.store
                    .finish_deployment(deployment, DeploymentOutcome::Succeeded, None)?;
                self.emit(
                    EventKind::RevisionApplied,
                    None,
                    Some(number),
                    Some(provenance.author.clone()),
                    format!("revision {number} is live ({ms} ms)"),
                );
                drop(guard);
                Ok(ApplyResult {
                    revision: number,
                    new_revision,
                    services: plan.services,
                    duration_ms: ms,
                })
            }
            Err(f) => {
                say(
                    &progress,
                    "stopping what this deployment started; the previous revision keeps running",
                );
                self.undo(run, live.as_ref(), &progress).await;
                if new_revision {
                    self.store.mark_failed(&self.env, number, &f.message)?;
                }
                let outcome = if f.by_gate {
                    DeploymentOutcome::RolledBack
                } else {
                    DeploymentOutcome::Failed
                };
                self.store
                    .finish_deployment(deployment, outcome, Some(&f.message))?;
                self.emit(
                    if f.by_gate {
                        EventKind::DeployRolledBack
                    } else {
                        EventKind::ApplyFailed
                    },
                    None,
                    Some(number),
                    Some(provenance.author.clone()),
                    format!(
                        "revision {number} {}: {}",
                        if f.by_gate {
                            "was rolled back automatically"
                        } else {
                            "failed"
                        },
                        f.message
                    ),
                );
                drop(guard);
                if f.by_gate {
                    Err(DeployError::RolledBack {
                        message: f.message,
                        revision: number,
                    })
                } else {
                    Err(DeployError::Failed {
                        message: f.message,
                        revision: new_revision.then_some(number),
                    })
                }
            }
        }
    }

    /// The `post_deploy` hooks of the services a deploy started or replaced, once its
    /// revision is live. A failure is reported (progress, deployment step, log); the
    /// revision stays live: a hook after the switch cannot undo it.
    async fn run_post_deploy_hooks(
        &self,
        system: &System,
        revision: u64,
        deployed: &[String],
        deployment: Option<u64>,
        progress: &Option<Progress>,
    ) {
        let templates = self.templates(system);
        for name in deployed {
            let Some(template) = templates.get(name) else {
                continue;
            };
            if let Err(message) = self
                .run_hook(
                    crate::hooks::Hook::PostDeploy,
                    name,
                    template,
                    revision,
                    deployment,
                    progress,
                )
                .await
            {
                tracing::warn!("{message}");
                say(
                    progress,
                    format!(
                        "warning: {message}
  revision {revision} stays live"
                    ),
                );
            }
        }
    }

    /// Rolls out every touched service of `system`, layer by layer in dependency order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn roll_out(
        &self,
        system: &System,
        revision: u64,
        plans: &[ServicePlan],
        run: &mut Run,
        deployment: Option<u64>,
        options: &DeployOptions,
        progress: &Option<Progress>,
    ) -> Result<(), Failure> {
        self.open_listeners(system).await.map_err(failure)?;
        let templates = self.templates(system);
        let actions: BTreeMap<&str, &ServicePlan> =
            plans.iter().map(|p| (p.name.as_str(), p)).collect();
        let warm = self.routing.lock().expect("routing lock").warm_ids();
        for layer in tandem_spec::start_order(system) {
            for name in &layer {
                let Some(plan) = actions.get(name.as_str()) else {
                    continue;
                };
                if matches!(plan.action, ServiceAction::Keep | ServiceAction::Remove) {
                    continue;
                }
                let service = &system.service[name];
                let template = &templates[name];
                for dep in &service.depends_on {
                    self.wait_dependency(dep)
                        .await
                        .map_err(|e| failure(format!("service '{name}' cannot start: {e}")))?;
                }
                // New code of the service: its pre_deploy hook (a migration) runs first,
                // while the previous revision still serves.
                if !options.plain
                    && matches!(plan.action, ServiceAction::Start | ServiceAction::Replace)
                {
                    self.run_hook(
                        crate::hooks::Hook::PreDeploy,
                        name,
                        template,
                        revision,
                        deployment,
                        progress,
                    )
                    .await
                    .map_err(failure)?;
                    run.deployed.push(name.clone());
                }
                let serving = self.routing.lock().expect("routing lock").serving(name);
                let others: Vec<String> = self
                    .runtime
                    .instances_of(name)
                    .into_iter()
                    .map(|(id, _, _)| id)
                    .filter(|id| !serving.contains(id) && !warm.contains(id))
                    .collect();
                if matches!(plan.action, ServiceAction::Replace) {
                    self.replace(
                        system, name, revision, &serving, &others, run, deployment, options,
                        progress,
                    )
                    .await?;
                    continue;
                }
                // Start, restore or scale: same definition, more or fewer instances.
                let mut keep: BTreeMap<u32, String> = BTreeMap::new();
                let mut surplus = Vec::new();
                for (id, index, hash) in self.runtime.instances_of(name) {
                    if warm.contains(&id) {
                        continue;
                    }
                    if hash == template.hash
                        && index < service.replicas
                        && !keep.contains_key(&index)
                    {
                        keep.insert(index, id);
                    } else {
                        surplus.push(id);
                    }
                }
                let missing: Vec<u32> = (0..service.replicas)
                    .filter(|i| !keep.contains_key(i))
                    .collect();
                if !missing.is_empty() {
                    say(
                        progress,
                        format!("{name}: starting {} instance(s)", missing.len()),
                    );
                }
                let fresh = self
                    .start_instances(name, template, revision, &missing, run)
                    .await?;
                let mut ids: Vec<String> = keep.into_values().collect();
                ids.extend(fresh);
                {
                    let mut routing = self.routing.lock().expect("routing lock");
                    routing.all_to(name, &ids);
                }
                self.update_backends();
                if !surplus.is_empty() {
                    run.retire.push((name.clone(), surplus, Duration::ZERO));
                }
            }
        }
        Ok(())
    }

    /// Replaces one service's instances by its release strategy.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        system: &System,
        name: &str,
        revision: u64,
        serving: &[String],
        others: &[String],
        run: &mut Run,
        deployment: Option<u64>,
        options: &DeployOptions,
        progress: &Option<Progress>,
    ) -> Result<(), Failure> {
        let service = &system.service[name];
        let template = &self.templates(system)[name];
        let has_traffic =
            service.port.is_some() || !tandem_spec::dependents(system, name).is_empty();
        // Plain roll-outs (recovery, rollback) skip canary steps and warm pools, but a
        // service that must never run twice (`recreate`) is still replaced in that order.
        let release = match (&service.release, options.plain) {
            (Some(Release::Recreate), _) => Some(Release::Recreate),
            (_, true) => None,
            (r, false) => r.clone(),
        };
        let indexes: Vec<u32> = (0..service.replicas).collect();
        let strategy = match &release {
            Some(Release::Recreate) => "recreate",
            Some(Release::BlueGreen { .. }) => "blue-green",
            Some(Release::Canary { .. }) => "canary",
            None => "replace",
        };
        if matches!(release, Some(Release::Recreate)) {
            self.record(
                deployment,
                Some(name),
                progress,
                format!("{name}: recreate: stopping the old instances first"),
                None,
                Vec::new(),
            );
            let old: Vec<String> = serving.iter().chain(others).cloned().collect();
            {
                let mut routing = self.routing.lock().expect("routing lock");
                routing.weights.remove(name);
            }
            self.update_backends();
            join_all(old.iter().map(|id| self.runtime.stop(id))).await;
            run.recreated.push(name.to_string());
        } else {
            say(
                progress,
                format!(
                    "{name}: starting {} new instance(s) ({strategy})",
                    indexes.len()
                ),
            );
        }
        let new_ids = self
            .start_instances(name, template, revision, &indexes, run)
            .await?;
        if let (
            Some(Release::Canary {
                steps,
                step_time,
                max_error_rate,
                max_p99,
                min_requests,
                analysis,
                ..
            }),
            true,
        ) = (&release, has_traffic)
        {
            let limits = CanaryLimits {
                max_error_rate: *max_error_rate,
                max_p99: max_p99.map(|d| d.0),
                min_requests: min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            };
            // The revision the canary's queries compare with: the one live before this
            // deploy (0 on a first deploy, when nothing is).
            let old_revision = match self.store.live(&self.env) {
                Ok(live) => live.map_or(0, |live| live.number),
                Err(e) => return Err(failure(format!("service '{name}': {e}"))),
            };
            run.switched.push((name.to_string(), serving.to_vec()));
            let total = steps.len();
            for (i, pct) in steps.iter().enumerate() {
                if *pct >= 100 {
                    break;
                }
                {
                    let mut routing = self.routing.lock().expect("routing lock");
                    routing.split(name, serving, &new_ids, *pct);
                }
                self.update_backends();
                self.emit(
                    EventKind::TrafficShift,
                    Some(name.to_string()),
                    Some(revision),
                    None,
                    format!(
                        "{name}: {pct}% of traffic to revision {revision} (canary step {}/{total})",
                        i + 1
                    ),
                );
                say(
                    progress,
                    format!(
                        "{name}: canary step {}/{total}: {pct}% to r{revision}, holding {}",
                        i + 1,
                        step_time
                    ),
                );
                let outcome = self
                    .hold_and_judge(
                        name,
                        (revision, old_revision),
                        step_time.0,
                        (&limits, analysis),
                        progress,
                        &format!("step {}/{total} ({pct}%)", i + 1),
                    )
                    .await;
                let passed = outcome.iter().all(|g| g.passed);
                let summary = outcome
                    .iter()
                    .map(|g| {
                        format!(
                            "{} {} (allowed {}){}",
                            g.check,
                            g.measured,
                            g.allowed,
                            if g.passed { "" } else { " FAILED" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                self.record(
                    deployment,
                    Some(name),
                    progress,
                    format!(
                        "{name}: canary step {}/{total} at {pct}%: {}",
                        i + 1,
                        if summary.is_empty() {
                            "no checks".into()
                        } else {
                            summary
                        }
                    ),
                    Some(*pct),
                    outcome.clone(),
                );
                if !passed {
                    let g = outcome.iter().find(|g| !g.passed).expect("a failed gate");
                    return Err(Failure {
                        message: format!(
                            "service '{name}': canary step {}/{total} ({pct}% to revision {revision}): {} {}, allowed {}",
                            i + 1,
                            g.check,
                            g.measured,
                            g.allowed
                        ),
                        by_gate: true,
                    });
                }
            }
        } else {
            run.switched.push((name.to_string(), serving.to_vec()));
        }
        {
            let mut routing = self.routing.lock().expect("routing lock");
            routing.all_to(name, &new_ids);
        }
        self.update_backends();
        self.emit(
            EventKind::TrafficShift,
            Some(name.to_string()),
            Some(revision),
            None,
            format!("{name}: all traffic to revision {revision}"),
        );
        self.record(
            deployment,
            Some(name),
            progress,
            format!("{name}: all traffic to r{revision}"),
            Some(100),
            Vec::new(),
        );
        let keep_warm = match &release {
            Some(Release::BlueGreen { keep_warm }) | Some(Release::Canary { keep_warm, .. })
                if has_traffic =>
            {
                keep_warm.map(|d| d.0).unwrap_or(DEFAULT_KEEP_WARM)
            }
            _ => Duration::ZERO,
        };
        if !serving.is_empty() {
            run.retire
                .push((name.to_string(), serving.to_vec(), keep_warm));
        }
        if !others.is_empty() {
            run.retire
                .push((name.to_string(), others.to_vec(), Duration::ZERO));
        }
        Ok(())
    }

    /// Starts instances at `indexes` and waits for each to pass its health check once.
    async fn start_instances(
        &self,
        name: &str,
        template: &crate::plan::ServiceTemplate,
        revision: u64,
        indexes: &[u32],
        run: &mut Run,
    ) -> Result<Vec<String>, Failure> {
        let mut ids = Vec::new();
        for index in indexes {
            let id = self
                .runtime
                .start(instance_request(template, name, revision, *index))
                .map_err(|e| failure(format!("service '{name}': {e}")))?;
            run.started.push(id.clone());
            ids.push(id);
        }
        let results = join_all(
            ids.iter()
                .map(|id| async move { (id.clone(), self.runtime.wait_ready(id).await) }),
        )
        .await;
        for (id, result) in results {
            if let Err(e) = result {
                let tail = self.log_tail(name, &id, 8);
                let mut message = format!("service '{name}': {e}");
                if !tail.is_empty() {
                    message.push_str("\n  last output:");
                    for line in tail {
                        message.push_str("\n    ");
                        message.push_str(&line);
                    }
                }
                return Err(failure(message));
            }
        }
        Ok(ids)
    }

    /// Holds a canary step for `step_time` (longer while the new revision has too few
    /// requests, up to [`MAX_HOLDS`] times) and judges the window: the proxy's figures
    /// every second (a clear breach ends the step at once), then at the end the analysis
    /// queries too, if the proxy's figures passed.
    async fn hold_and_judge(
        &self,
        name: &str,
        (revision, old_revision): (u64, u64),
        step_time: Duration,
        (limits, checks): (&CanaryLimits, &[tandem_spec::Analysis]),
        progress: &Option<Progress>,
        step: &str,
    ) -> Vec<GateResult> {
        let started = tokio::time::Instant::now();
        let mut gates = self
            .hold_and_judge_traffic(name, revision, step_time, limits, progress, step)
            .await;
        if checks.is_empty() || gates.iter().any(|g| !g.passed) {
            return gates;
        }
        let variables = crate::analysis::StepVariables {
            env: &self.env,
            service: name,
            revision,
            old_revision,
            held: started.elapsed(),
        };
        match &self.analysis {
            Some(querier) => gates.extend(crate::analysis::evaluate(
                querier.as_ref(),
                checks,
                &variables,
            )),
            None => gates.extend(checks.iter().map(|check| GateResult {
                check: format!("analysis '{}'", check.name),
                measured: "not evaluated: no monitoring store to query".into(),
                allowed: String::new(),
                passed: false,
            })),
        }
        gates
    }

    /// The proxy's side of [`Engine::hold_and_judge`].
    async fn hold_and_judge_traffic(
        &self,
        name: &str,
        revision: u64,
        step_time: Duration,
        limits: &CanaryLimits,
        progress: &Option<Progress>,
        step: &str,
    ) -> Vec<GateResult> {
        let before = self.proxy.revision_stats(name);
        let mut holds = 0;
        loop {
            holds += 1;
            let end = tokio::time::Instant::now() + step_time;
            loop {
                let tick = tokio::time::Instant::now() + Duration::from_secs(1);
                tokio::time::sleep_until(tick.min(end)).await;
                let (new, old) = window(&before, &self.proxy.revision_stats(name), revision);
                say(
                    progress,
                    format!(
                        "{name}: {step} · r{revision} {} · old {}",
                        describe(&new),
                        describe(&old)
                    ),
                );
                // A clear breach ends the step at once: no need to send more users to it.
                if new.requests >= limits.min_requests {
                    let gates = judge(&new, &old, limits);
                    if gates.iter().any(|g| !g.passed) {
                        return gates;
                    }
                }
                if tokio::time::Instant::now() >= end {
                    break;
                }
            }
            let (new, old) = window(&before, &self.proxy.revision_stats(name), revision);
            if new.requests >= limits.min_requests || holds >= MAX_HOLDS {
                return judge(&new, &old, limits);
            }
            say(
                progress,
                format!(
                    "{name}: {step}: only {} request(s) reached r{revision} (min_requests {}); holding another {}",
                    new.requests,
                    limits.min_requests,
                    tandem_spec::units::Dur(step_time)
                ),
            );
        }
    }

    /// After the revision is live: old instances drain and stop, or stay warm; services gone
    /// from the file stop.
    pub(crate) async fn retire(&self, system: &System, run: Run, progress: &Option<Progress>) {
        let until = |d: Duration| tokio::time::Instant::now() + d;
        let mut to_stop: Vec<(String, String)> = Vec::new();
        {
            let mut routing = self.routing.lock().expect("routing lock");
            for (service, ids, keep_warm) in run.retire {
                for id in ids {
                    let Some(status) = self.runtime.status(&id) else {
                        continue;
                    };
                    if keep_warm > Duration::ZERO {
                        let hash = self
                            .runtime
                            .instances_of(&service)
                            .into_iter()
                            .find(|(i, _, _)| *i == id)
                            .map(|(_, _, h)| h)
                            .unwrap_or_default();
                        routing.warm.entry(service.clone()).or_default().push(Warm {
                            id,
                            revision: status.revision,
                            template_hash: hash,
                            until: until(keep_warm),
                        });
                    } else {
                        to_stop.push((service.clone(), id));
                    }
                }
            }
            for service in self.runtime.services() {
                if !system.service.contains_key(&service) {
                    routing.weights.remove(&service);
                    routing.warm.remove(&service);
                    for (id, _, _) in self.runtime.instances_of(&service) {
                        to_stop.push((service.clone(), id));
                    }
                }
            }
        }
        self.update_backends();
        for service in self.runtime.services() {
            if !system.service.contains_key(&service) {
                self.proxy.set_weighted_backends(&service, Vec::new());
            }
        }
        let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (service, id) in to_stop {
            by_service.entry(service).or_default().push(id);
        }
        for (service, ids) in &by_service {
            say(
                progress,
                format!(
                    "{service}: draining and stopping {} old instance(s)",
                    ids.len()
                ),
            );
        }
        // Drain and stop in the background: the deployment is done once traffic moved.
        let runtime = self.runtime.clone();
        let proxy = self.proxy.clone();
        tokio::spawn(async move {
            join_all(by_service.into_iter().map(|(service, ids)| {
                let runtime = runtime.clone();
                let proxy = proxy.clone();
                async move {
                    let addrs: Vec<SocketAddr> = ids
                        .iter()
                        .filter_map(|id| runtime.status(id))
                        .map(|s| SocketAddr::from(([127, 0, 0, 1], s.port)))
                        .collect();
                    proxy.drain(&service, &addrs, DRAIN_TIMEOUT).await;
                    join_all(ids.iter().map(|id| runtime.stop(id))).await;
                }
            }))
            .await;
        });
    }

    /// After a failure: traffic back to the instances that had it, the new instances
    /// stopped, and services that a `recreate` had stopped started again.
    async fn undo(&self, run: Run, live: Option<&Revision>, progress: &Option<Progress>) {
        {
            let mut routing = self.routing.lock().expect("routing lock");
            for (service, old) in run.switched.iter().rev() {
                if old.is_empty() {
                    routing.weights.remove(service);
                } else {
                    routing.all_to(service, old);
                }
            }
            let started: BTreeSet<&String> = run.started.iter().collect();
            for weights in routing.weights.values_mut() {
                weights.retain(|id, _| !started.contains(id));
            }
        }
        self.update_backends();
        join_all(run.started.iter().map(|id| self.runtime.stop(id))).await;
        if let Some(l) = live {
            if !run.recreated.is_empty() {
                let templates = self.templates(&l.system);
                for name in &run.recreated {
                    let (Some(template), Some(service)) =
                        (templates.get(name), l.system.service.get(name))
                    else {
                        continue;
                    };
                    say(
                        progress,
                        format!("{name}: starting the previous revision's instances again"),
                    );
                    let mut ids = Vec::new();
                    for index in 0..service.replicas {
                        if let Ok(id) = self
                            .runtime
                            .start(instance_request(template, name, l.number, index))
                        {
                            ids.push(id);
                        }
                    }
                    self.routing
                        .lock()
                        .expect("routing lock")
                        .all_to(name, &ids);
                }
                self.update_backends();
            }
            self.close_unneeded_listeners(&l.system);
        } else {
            for (key, _, _) in self.proxy.listeners() {
                self.proxy.close_listener(&key);
            }
        }
    }

    /// One line of a deployment's record: stored, logged, sent as progress, on the timeline.
    pub(crate) fn record(
        &self,
        deployment: Option<u64>,
        service: Option<&str>,
        progress: &Option<Progress>,
        message: String,
        new_traffic_pct: Option<u8>,
        gates: Vec<GateResult>,
    ) {
        say(progress, message.clone());
        if let Some(id) = deployment {
            let step = DeployStep {
                time_ms: now_ms(),
                service: service.map(str::to_string),
                message: message.clone(),
                new_traffic_pct,
                gates,
            };
            if let Err(e) = self.store.add_deploy_step(id, &step) {
                tracing::warn!("cannot record a deployment step: {e}");
            }
            self.emit(
                EventKind::DeployStep,
                service.map(str::to_string),
                None,
                None,
                message,
            );
        }
    }
}

/// The limits a canary step is judged against.
#[derive(Clone, Debug)]
pub struct CanaryLimits {
    pub max_error_rate: Option<f64>,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

/// Figures of one side of a canary over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    pub requests: u64,
    pub errors: u64,
    pub latency: LatencyHistogram,
}

impl Side {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
    pub fn p99(&self) -> Option<Duration> {
        self.latency.quantile(0.99)
    }
}

/// The new revision's and the old revisions' figures between two snapshots.
pub fn window(
    before: &BTreeMap<u64, RevisionStats>,
    after: &BTreeMap<u64, RevisionStats>,
    new_revision: u64,
) -> (Side, Side) {
    let mut new = Side::default();
    let mut old = Side::default();
    for (revision, stats) in after {
        let earlier = before.get(revision).cloned().unwrap_or_default();
        let side = if *revision == new_revision {
            &mut new
        } else {
            &mut old
        };
        side.requests += stats.requests.saturating_sub(earlier.requests);
        side.errors += stats.errors.saturating_sub(earlier.errors);
        side.latency.merge(&stats.latency.since(&earlier.latency));
    }
    (new, old)
}

fn describe(side: &Side) -> String {
    format!(
        "{} req, {:.1}% errors, p99 {}",
        side.requests,
        side.error_rate() * 100.0,
        side.p99()
            .map(|d| format!("{}ms", d.as_millis()))
            .unwrap_or_else(|| "-".into())
    )
}

/// Judges a canary window: the absolute limits, then "not clearly worse than the old
/// revision" when the old side saw enough requests too. Too few requests on the new side:
/// one passing `min_requests` result that says so (the step was not judged).
pub fn judge(new: &Side, old: &Side, limits: &CanaryLimits) -> Vec<GateResult> {
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    if new.requests < limits.min_requests {
        return vec![GateResult {
            check: "min_requests (not judged)".into(),
            measured: new.requests.to_string(),
            allowed: format!(">= {}", limits.min_requests),
            passed: true,
        }];
    }
    let mut gates = Vec::new();
    if let Some(max) = limits.max_error_rate {
        gates.push(GateResult {
            check: "max_error_rate".into(),
            measured: pct(new.error_rate()),
            allowed: pct(max),
            passed: new.error_rate() <= max,
        });
    }
    if let (Some(max), Some(p99)) = (limits.max_p99, new.p99()) {
        gates.push(GateResult {
            check: "max_p99".into(),
            measured: ms(p99),
            allowed: ms(max),
            passed: p99 <= max,
        });
    }
    if old.requests >= limits.min_requests {
        let allowed =
            (old.error_rate() * ERROR_RATE_FACTOR).max(old.error_rate() + ERROR_RATE_MARGIN);
        gates.push(GateResult {
            check: "error rate vs old".into(),
            measured: pct(new.error_rate()),
            allowed: pct(allowed),
            passed: new.error_rate() <= allowed,
        });
        // A p99 of fewer than 100 requests is just their slowest one: too noisy to hold
        // against the old revision's.
        if let (Some(new_p99), Some(old_p99), true) = (
            new.p99(),
            old.p99(),
            new.requests >= MIN_REQUESTS_FOR_P99 && old.requests >= MIN_REQUESTS_FOR_P99,
        ) {
            let allowed = old_p99.mul_f64(P99_FACTOR).max(old_p99 + P99_MARGIN);
            gates.push(GateResult {
                check: "p99 vs old".into(),
                measured: ms(new_p99),
                allowed: ms(allowed),
                passed: new_p99 <= allowed,
            });
        }
    }
    gates
}
