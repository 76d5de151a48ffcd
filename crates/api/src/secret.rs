//! The secret store's API (`/v1/secrets`): what `tandem secret set/list/rm` send and get.
//! A value travels in one direction only, in a set request; no answer carries one, and the
//! request's `Debug` form hides it so that no log line can.

use serde::{Deserialize, Serialize};

/// `POST /v1/secrets/{name}`: sets the secret's value.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretSetRequest {
    pub value: String,
    /// Who sets it (git `user.name`, else the login name).
    pub who: String,
}

impl std::fmt::Debug for SecretSetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSetRequest")
            .field("value", &"(hidden)")
            .field("who", &self.who)
            .finish()
    }
}

/// One secret as `GET /v1/secrets` lists it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// When its value was last set (ms since the epoch).
    pub set_ms: i64,
    /// Who set it.
    pub set_by: String,
    /// A keyed fingerprint of the value (`hmac-sha256:` and 16 hex digits): equal for equal
    /// values in this environment, and useless for guessing the value without the store's key.
    pub fingerprint: String,
    /// Services of the live revision that list it in `secrets`.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `POST /v1/secrets/{name}/remove`: removes the secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretRemoveRequest {
    pub who: String,
}
