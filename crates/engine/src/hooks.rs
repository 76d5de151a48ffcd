//! Running a service's deploy hooks during a deploy: `pre_deploy` once before the new
//! revision's instances of the service start (after its dependencies are up), and
//! `post_deploy` once the whole revision is live. Only deploys run them: a rollback or a
//! server's recovery restores code that already ran its hooks, and must stay a quick
//! switch.
//!
//! A hook runs with the service's folder and environment (as the new instances get it,
//! plus `TANDEM_REVISION` and `TANDEM_HOOK`), its output goes to
//! `logs/SERVICE/SERVICE-HOOK-rREV.log` (so `tandem logs SERVICE` shows it), and its last
//! lines come back in the deploy's failure message.

use crate::plan::ServiceTemplate;
use crate::{Engine, Progress};
use tandem_supervisor::task::{TaskEnd, TaskOutcome, TaskRequest, run_task};

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PreDeploy,
    PostDeploy,
}

impl Hook {
    /// The key in the system file.
    pub fn key(self) -> &'static str {
        match self {
            Hook::PreDeploy => "pre_deploy",
            Hook::PostDeploy => "post_deploy",
        }
    }

    /// In file names: `api-pre-deploy-r3.log`.
    fn file_word(self) -> &'static str {
        match self {
            Hook::PreDeploy => "pre-deploy",
            Hook::PostDeploy => "post-deploy",
        }
    }

    fn command(self, template: &ServiceTemplate) -> Option<&str> {
        let hooks = template.service.hooks.as_ref()?;
        match self {
            Hook::PreDeploy => hooks.pre_deploy.as_deref(),
            Hook::PostDeploy => hooks.post_deploy.as_deref(),
        }
    }
}

/// Lines of a failed hook's output quoted in the deploy's message.
const QUOTED_LINES: usize = 8;

impl Engine {
    /// Runs `hook` of service `name` if it has one. `Ok` also when there is none; `Err` is
    /// the message for the deploy: what failed, how, and the hook's last lines.
    pub(crate) async fn run_hook(
        &self,
        hook: Hook,
        name: &str,
        template: &ServiceTemplate,
        revision: u64,
        deployment: Option<u64>,
        progress: &Option<Progress>,
    ) -> Result<(), String> {
        let Some(command) = hook.command(template) else {
            return Ok(());
        };
        let timeout = template
            .service
            .hooks
            .as_ref()
            .map(|hooks| hooks.timeout())
            .unwrap_or(tandem_spec::hooks::DEFAULT_HOOK_TIMEOUT);
        let log_name = format!("{name}-{}-r{revision}", hook.file_word());
        self.record(
            deployment,
            Some(name),
            progress,
            format!("{name}: running {} hook: {command}", hook.key()),
            None,
            Vec::new(),
        );
        let mut env = template.env.clone();
        env.insert("TANDEM_REVISION".into(), revision.to_string());
        env.insert("TANDEM_HOOK".into(), hook.key().into());
        let request = TaskRequest {
            service: name.to_string(),
            run: command.to_string(),
            cwd: template.service.cwd.clone().into(),
            env,
            timeout: timeout.0,
            log: self.runtime.task_log(name, &log_name),
        };
        let outcome = run_task(&request).await;
        let took = format!("{:.1}s", outcome.took.as_secs_f64());
        if outcome.succeeded() {
            self.record(
                deployment,
                Some(name),
                progress,
                format!("{name}: {} hook succeeded in {took}", hook.key()),
                None,
                Vec::new(),
            );
            return Ok(());
        }
        let how = describe_end(&outcome, timeout);
        let message = format!(
            "service '{name}': {} hook {how} after {took}\n  command: {command}{}",
            hook.key(),
            quote_tail(&outcome, &log_name)
        );
        self.record(
            deployment,
            Some(name),
            progress,
            format!("{name}: {} hook {how}", hook.key()),
            None,
            Vec::new(),
        );
        Err(message)
    }
}

fn describe_end(outcome: &TaskOutcome, timeout: tandem_spec::units::Dur) -> String {
    match &outcome.end {
        TaskEnd::Succeeded => "succeeded".into(),
        TaskEnd::Failed(status) => format!("failed ({status})"),
        TaskEnd::TimedOut => format!("did not finish within its timeout of {timeout}"),
        TaskEnd::NotStarted(why) => format!("could not start: {why}"),
    }
}

fn quote_tail(outcome: &TaskOutcome, log_name: &str) -> String {
    if outcome.tail.is_empty() {
        return String::new();
    }
    let skip = outcome.tail.len().saturating_sub(QUOTED_LINES);
    let mut text = format!("\n  last output (all of it: tandem logs, instance {log_name}):");
    for line in &outcome.tail[skip..] {
        text.push_str("\n    ");
        text.push_str(line);
    }
    text
}
