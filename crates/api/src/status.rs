//! What `tandem status` shows: the server and every instance.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub pid: u32,
    pub version: String,
    pub env: String,
    pub listen: String,
    pub data_dir: String,
    pub started_ms: i64,
    /// Why limits are not enforced, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_warning: Option<String>,
}
