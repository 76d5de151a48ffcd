//! `tandem exec`'s API (`POST /v1/services/{name}/exec-env`): the CLI says who runs which
//! command in which service, and gets back the service's folder and environment in the live
//! revision, so that it can run the command itself, attached to the user's terminal. The
//! answer holds secret values: its `Debug` form hides the environment's values so that no
//! log line can carry one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the CLI sends: recorded on the timeline (never the environment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Who runs it (git `user.name`, else the login name).
    pub who: String,
    /// The command and its arguments, as the user's shell passed them.
    pub command: Vec<String>,
}

/// What a one-off command of a service runs with.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExecEnv {
    pub service: String,
    /// The live revision the environment comes from.
    pub revision: u64,
    /// The service's working folder (its `cwd`, absolute).
    pub cwd: String,
    /// The service's environment as its instances get it (declared `env` with `${VAR}`
    /// interpolated, injected `<DEP>_URL`..., `TANDEM_ENV`, `TANDEM_SERVICE`, secret values),
    /// without `PORT`, plus `TANDEM_EXEC=1` and `TANDEM_REVISION`.
    pub env: BTreeMap<String, String>,
    /// Variables left out because their `${VAR}` could not be interpolated (such as one
    /// that uses `${PORT}`), each as `NAME: why`.
    #[serde(default)]
    pub left_out: Vec<String>,
}

impl std::fmt::Debug for ExecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecEnv")
            .field("service", &self.service)
            .field("revision", &self.revision)
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("left_out", &self.left_out)
            .finish()
    }
}
