//! The one error type a query can fail with. Its kind maps onto Prometheus's `errorType`
//! (`bad_data` answers HTTP 400, `execution` 422, `timeout` 503), so the HTTP layer can
//! render it without knowing anything about the evaluator.

use std::fmt;

/// What kind of failure, in Prometheus's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The query does not parse or does not type-check, or a parameter is invalid.
    BadData,
    /// The query is valid but its evaluation failed (for example many-to-many matching).
    Execution,
    /// The query ran out of its time budget.
    Timeout,
    /// The query would load more samples than the engine allows.
    Limit,
}

impl ErrorKind {
    /// Prometheus's `errorType` string for this kind.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Execution => "execution",
            ErrorKind::Timeout => "timeout",
            // Prometheus reports "query processing would load too many samples" as execution.
            ErrorKind::Limit => "execution",
        }
    }
}

/// A failed query: what went wrong and, when known, where in the query text.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalError {
    pub kind: ErrorKind,
    pub message: String,
    /// Byte offsets `(start, end)` into the query string.
    pub position: Option<(usize, usize)>,
}

impl EvalError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> EvalError {
        EvalError {
            kind,
            message: message.into(),
            position: None,
        }
    }

    pub(crate) fn bad_data(message: impl Into<String>) -> EvalError {
        EvalError::new(ErrorKind::BadData, message)
    }

    pub(crate) fn execution(message: impl Into<String>) -> EvalError {
        EvalError::new(ErrorKind::Execution, message)
    }

    pub(crate) fn at(mut self, position: Option<(usize, usize)>) -> EvalError {
        self.position = position;
        self
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((start, end)) => write!(f, "{}:{}: {}", start + 1, end + 1, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for EvalError {}
