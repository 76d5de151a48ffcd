//! Rolling back: back to the previous good revision (the last one that went live before the
//! live one, skipping failed and rolled-back ones) or a named one.
//!
//! Every service whose target instances are still warm is switched first, before anything
//! is written, so traffic reaches the old revision within milliseconds of the request; the
//! services that have nothing warm start the target's instances with health gates and switch
//! once healthy. The rollback is recorded as a new revision pointing at the one it restores,
//! and the revision rolled away from is marked `rolled-back`, so that a deploy of the same
//! content needs `--force`.

use crate::deploy::{DeployError, DeployOptions, Run};
use crate::{Engine, Progress, say};
use std::time::Duration;
use tandem_api::{
    ApplyResult, DeploymentKind, DeploymentOutcome, EventKind, Provenance, RevisionStatus,
    ServiceAction, ServicePlan,
};

fn failed(message: impl Into<String>) -> DeployError {
    DeployError::Failed {
        message: message.into(),
        revision: None,
    }
}

impl Engine {
    /// Rolls the environment back to revision `to`, or to the previous good revision.
    pub async fn rollback(
        &self,
        to: Option<u64>,
        who: &str,
        progress: Option<Progress>,
    ) -> Result<ApplyResult, DeployError> {
        let guard = self
            .try_lock(DeploymentKind::Rollback, who)
            .map_err(DeployError::Busy)?;
        let started = tokio::time::Instant::now();
        let live = self.store.live(&self.env)?.ok_or_else(|| {
            failed(format!(
                "nothing is live in {}; there is nothing to roll back",
                self.env
            ))
        })?;
        let target = match to {
            Some(n) => {
                let r = self.store.get(&self.env, n)?.ok_or_else(|| {
                    failed(format!(
                        "revision {n} does not exist in {}; `tandem history` lists them",
                        self.env
                    ))
                })?;
                if r.number == live.number {
                    return Err(failed(format!("revision {n} is the live revision already")));
                }
                if matches!(r.status, RevisionStatus::Failed | RevisionStatus::Applying) {
                    return Err(failed(format!(
                        "revision {n} never went live ({}); roll back to a revision that was live (`tandem history`)",
                        r.status.as_str()
                    )));
                }
                r
            }
            None => {
                let previous = self
                    .store
                    .list(&self.env, 10_000)?
                    .into_iter()
                    // The last revision that went live before the live one, with other content
                    // (a rollback's own revision has the content it restored).
                    .find(|r| {
                        r.number < live.number
                            && r.status == RevisionStatus::Superseded
                            && r.hash != live.hash
                    })
                    .ok_or_else(|| {
                        failed(format!(
                            "no revision before {} went live in {}; there is nothing to roll back to",
                            live.number, self.env
                        ))
                    })?;
                self.store
                    .get(&self.env, previous.number)?
                    .ok_or_else(|| failed(format!("revision {} vanished", previous.number)))?
            }
        };
        if target.hash == live.hash {
            return Err(failed(format!(
                "revision {} has the same content as the live revision {}; there is nothing to switch",
                target.number, live.number
            )));
        }
        if let Err(e) = self.edges.ensure(&target.system) {
            return Err(failed(format!("cannot save edge ports: {e}")));
        }
        let templates = self.templates(&target.system);

        // 1. Switch every service whose target instances are warm: traffic moves now.
        let mut run = Run::default();
        let mut plans: Vec<ServicePlan> = Vec::new();
        let mut switched_warm: Vec<String> = Vec::new();
        // The warm instances a switch used, to put back if the rollback fails.
        let mut taken_warm: Vec<(String, Vec<crate::routing::Warm>)> = Vec::new();
        {
            let mut routing = self.routing.lock().expect("routing lock");
            for (name, service) in &target.system.service {
                let template = &templates[name];
                let serving = routing.serving(name);
                let serving_matches = serving.len() as u32 == service.replicas
                    && serving.iter().all(|id| {
                        self.runtime
                            .instances_of(name)
                            .iter()
                            .any(|(i, _, h)| i == id && *h == template.hash)
                    });
                let action = if serving_matches {
                    ServiceAction::Keep
                } else {
                    let warm = routing.take_warm(name, &template.hash);
                    let healthy: Vec<String> = warm
                        .iter()
                        .filter(|w| {
                            self.runtime
                                .status(&w.id)
                                .is_some_and(|s| s.state == tandem_api::InstanceState::Healthy)
                        })
                        .map(|w| w.id.clone())
                        .collect();
                    if healthy.len() as u32 >= service.replicas && service.replicas > 0 {
                        routing.all_to(name, &healthy);
                        run.switched.push((name.clone(), serving.clone()));
                        run.retire.push((name.clone(), serving, Duration::ZERO));
                        switched_warm.push(name.clone());
                        taken_warm.push((name.clone(), warm));
                        ServiceAction::Keep
                    } else {
                        // Put back what could not be used; it expires as planned.
                        routing.warm.entry(name.clone()).or_default().extend(warm);
                        ServiceAction::Replace
                    }
                };
                plans.push(ServicePlan {
                    name: name.clone(),
                    action,
                    because: Vec::new(),
                    blast_radius: Vec::new(),
                    strategy: None,
                });
            }
            for name in live.system.service.keys() {
                if !target.system.service.contains_key(name) {
                    plans.push(ServicePlan {
                        name: name.clone(),
                        action: ServiceAction::Remove,
                        because: vec!["not in the revision rolled back to".into()],
                        blast_radius: Vec::new(),
                        strategy: None,
                    });
                }
            }
        }
        self.update_backends();
        for name in &switched_warm {
            self.emit(
                EventKind::TrafficShift,
                Some(name.clone()),
                Some(target.number),
                Some(who.to_string()),
                format!(
                    "{name}: all traffic back to revision {}'s warm instances",
                    target.number
                ),
            );
        }
        if !switched_warm.is_empty() {
            say(
                &progress,
                format!(
                    "switched {} back to revision {}'s warm instances",
                    switched_warm.join(", "),
                    target.number
                ),
            );
        }

        // 2. Record it.
        let provenance = Provenance {
            git_commit: target.provenance.git_commit.clone(),
            git_dirty: target.provenance.git_dirty,
            author: who.to_string(),
            message: Some(format!("rollback to revision {}", target.number)),
            file: target.provenance.file.clone(),
        };
        let revision = self.store.begin_revision_of(
            &self.env,
            &target.system,
            &target.hash,
            &provenance,
            Some(target.number),
        )?;
        let number = revision.number;
        self.set_current_revision(number);
        let deployment = self.store.begin_deployment(
            &self.env,
            DeploymentKind::Rollback,
            number,
            Some(live.number),
            who,
        )?;
        for name in &switched_warm {
            self.record(
                Some(deployment),
                Some(name),
                &None,
                format!(
                    "{name}: all traffic to revision {}'s warm instances",
                    target.number
                ),
                Some(100),
                Vec::new(),
            );
        }

        // 3. Start what was not warm, with health gates, and switch.
        let options = DeployOptions {
            force: true,
            plain: true,
        };
        let result = self
            .roll_out(
                &target.system,
                number,
                &plans,
                &mut run,
                Some(deployment),
                &options,
                &progress,
            )
            .await;
        match result {
            Ok(()) => {
                self.store.mark_live(&self.env, number)?;
                let reason = format!(
                    "rolled back to revision {} by {who} (as revision {number})",
                    target.number
                );
                self.store
                    .mark_rolled_back(&self.env, live.number, &reason)?;
                self.retire(&target.system, run, &progress).await;
                self.close_unneeded_listeners(&target.system);
                self.store
                    .finish_deployment(deployment, DeploymentOutcome::Succeeded, None)?;
                let ms = started.elapsed().as_millis() as u64;
                self.emit(
                    EventKind::Rollback,
                    None,
                    Some(number),
                    Some(who.to_string()),
                    format!(
                        "rolled back from revision {} to revision {} (as revision {number}, {ms} ms)",
                        live.number, target.number
                    ),
                );
                drop(guard);
                let services = plans
                    .into_iter()
                    .map(|mut p| {
                        if switched_warm.contains(&p.name) {
                            p.action = ServiceAction::Replace;
                            p.because = vec!["switched to warm instances".into()];
                        }
                        p
                    })
                    .collect();
                Ok(ApplyResult {
                    revision: number,
                    new_revision: true,
                    services,
                    duration_ms: ms,
                })
            }
            Err(f) => {
                // Put traffic back where it was before the rollback started.
                {
                    let mut routing = self.routing.lock().expect("routing lock");
                    for (service, old) in &run.switched {
                        routing.all_to(service, old);
                    }
                    for (service, warm) in taken_warm {
                        routing.warm.entry(service).or_default().extend(warm);
                    }
                }
                self.update_backends();
                let started_ids = std::mem::take(&mut run.started);
                futures_util::future::join_all(started_ids.iter().map(|id| self.runtime.stop(id)))
                    .await;
                self.store.mark_failed(&self.env, number, &f.message)?;
                self.store.finish_deployment(
                    deployment,
                    DeploymentOutcome::Failed,
                    Some(&f.message),
                )?;
                self.emit(
                    EventKind::ApplyFailed,
                    None,
                    Some(number),
                    Some(who.to_string()),
                    format!(
                        "rollback to revision {} failed: {}",
                        target.number, f.message
                    ),
                );
                drop(guard);
                Err(DeployError::Failed {
                    message: f.message,
                    revision: Some(number),
                })
            }
        }
    }
}
