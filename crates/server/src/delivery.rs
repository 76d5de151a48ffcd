//! What can go wrong when the server sends something over HTTP (remote write, alert
//! notifications), and which failures are worth another try: one classification shared by
//! every sender, following Prometheus's rule.

use std::time::Duration;

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("cannot reach it: {0}")]
    Connection(String),
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("it answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    /// The request could not be made at all (the message says why).
    #[error("{0}")]
    Request(String),
}

impl SendError {
    /// Connection trouble, timeouts, 5xx and 429 are worth another try; any other answer
    /// means the receiver refused this content and will refuse it again.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            SendError::Connection(_) | SendError::Timeout(_) => true,
            SendError::Status { status, .. } => *status == 429 || *status >= 500,
            SendError::Request(_) => false,
        }
    }
}
